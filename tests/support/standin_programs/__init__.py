"""Programs of the STAND-IN packages (tests/support/standins.py installs them into .debs).

Each file is a self-contained python3 program (stdlib only, Python >= 3.11 for tomllib),
installed under the real binary's path. They reproduce the behaviour of the real program
that nodeforge relies on, as recorded in UPSTREAM.md: file layout, config lookup and merge
rules, and the failures the real program reports. Everything else is left out.
"""
