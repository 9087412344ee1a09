#include <mmattn/mmattn.hpp>

#include <cstdio>

int main() {
  std::printf("mmattn %s\n", mmattn::version_string());
  return 0;
}
