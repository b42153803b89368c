"""End-to-end runs that chain the library's stages: score -> prune -> fine-tune -> evaluate -> export."""
