"""DaMO: data-efficient, temporally grounded video-language models.

Public API::

    import damo
    model = damo.load("runs/demo/model")
    model.ground("video.mp4", "when does the man open the door?")

``damo.load`` is imported lazily so that light modules (schema, metrics) load without torch.
"""
__all__ = ["Grounder", "load"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from damo import api
        return getattr(api, name)
    raise AttributeError(f"module 'damo' has no attribute {name!r}")
