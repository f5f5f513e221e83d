"""Development tooling: `make run` (run_mesh.py), `make gen` (protogen.py), and what
scripts, bench/ and tests/ share (procs.py). None of it goes into the image."""
