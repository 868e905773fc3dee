"""SpriteWorld: the built-in synthetic world with ground truth (docs/data.md)."""

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "WorldConfig": "vimi.world.generate",
        "write_catalog": "vimi.world.generate",
        "Catalog": "vimi.world.catalog",
        "Subject": "vimi.world.catalog",
        "build_catalog": "vimi.world.catalog",
        "render_scene": "vimi.world.render",
        "draw_sprite": "vimi.world.render",
    },
)
