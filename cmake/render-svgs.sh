#!/usr/bin/env bash
# Renders SVG pictures to PNG with rsvg-convert and fails unless each one parses and draws
# something. "Something" means the PNG is at least 2 KiB larger than a blank white page of the same
# size: an SVG whose bars or blocks are all missing still renders (as its background), and a blank
# page of our pictures' sizes is already several KiB, so a fixed minimum size would pass it. A
# title alone adds well under 2 KiB. CI runs this on the committed pictures and on fresh ones.
#
# usage: cmake/render-svgs.sh OUT_DIR FILE.svg...   (OUT_DIR/NAME.png for each FILE)
set -euo pipefail

if (( $# < 2 )); then
  echo "usage: $0 OUT_DIR FILE.svg..." >&2
  exit 2
fi
command -v rsvg-convert >/dev/null || {
  echo "render-svgs: rsvg-convert is missing (cmake/install-deps.sh render installs it)" >&2
  exit 1
}
out=$1
shift
mkdir -p "$out"
blank="$out/.blank"

# Width and height of a PNG: IHDR's two big-endian 32-bit words at bytes 16..23.
png_dims() { od -An -tu1 -j16 -N8 "$1" | awk '{ print $1*16777216 + $2*65536 + $3*256 + $4, $5*16777216 + $6*65536 + $7*256 + $8 }'; }

failed=0
for svg in "$@"; do
  png="$out/$(basename "${svg%.svg}").png"
  rm -f "$png"
  if ! rsvg-convert -b white "$svg" -o "$png" || [[ ! -s "$png" ]]; then
    echo "render-svgs: FAIL $svg: rsvg-convert wrote no PNG" >&2
    failed=1
    continue
  fi
  read -r w h < <(png_dims "$png")
  printf '<svg xmlns="http://www.w3.org/2000/svg" width="%s" height="%s"/>' "$w" "$h" >"$blank.svg"
  rsvg-convert -b white "$blank.svg" -o "$blank.png"
  size=$(wc -c <"$png") floor=$(( $(wc -c <"$blank.png") + 2048 ))
  if (( size < floor )); then
    echo "render-svgs: FAIL $svg: ${w}x${h} PNG of $size bytes, a blank page is $((floor - 2048)): nothing drawn" >&2
    failed=1
  else
    echo "render-svgs: ok $svg -> $png (${w}x${h}, $size bytes)"
  fi
done
rm -f "$blank.svg" "$blank.png"
exit "$failed"
