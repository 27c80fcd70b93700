"""Tile storage: painted tiles are kept once, forever, keyed by world, model revision and z/x/y."""
