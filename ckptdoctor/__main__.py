"""`python -m ckptdoctor`."""

from ckptdoctor.cli import main

main()
