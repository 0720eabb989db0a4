"""`python -m qift_hw` = the `qift-hw` command."""

from qift_hw.cli import main

main()
