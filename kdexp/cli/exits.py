"""The exit codes every kdexp command shares (a leaf: no imports, so `kdexp-export` and
`kdexp-report` need not import the Hydra main for them)."""

EXIT_BAD_INPUT = 2  # a bad setting or argument, refused in one line before any work
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
