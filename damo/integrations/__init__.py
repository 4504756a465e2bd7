"""Plugins that run DaMO models inside other tools; each needs its tool's optional extra."""
