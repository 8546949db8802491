"""Page renderers of scripts/gen_docs.py: one function per docs page, JSON in, markdown out."""
