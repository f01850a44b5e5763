"""``python -m aaclip_med`` runs the command line."""

from aaclip_med.cli import main

main()
