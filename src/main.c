/* autosp-train: command line entry point (filled in with the executor). */
#include "autosp_config.h"
#include "util.h"

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    return 0;
}
