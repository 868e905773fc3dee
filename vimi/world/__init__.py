"""SpriteWorld: the built-in synthetic world with ground truth (DESIGN.md §4)."""
