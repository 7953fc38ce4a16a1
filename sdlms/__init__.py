__version__ = "0.1.0"

_EXPLORE = ("load_run", "runs", "Run")
__all__ = ["__version__", *_EXPLORE]

def __getattr__(name):
    "`sdlms.load_run`, `sdlms.runs`, `sdlms.Run`: the exploration API (`sdlms.explore`), imported on first use."
    if name in _EXPLORE:
        from sdlms import explore
        return getattr(explore, name)
    raise AttributeError(f"module 'sdlms' has no attribute {name!r}")

def __dir__():
    "What `sdlms.<TAB>` offers: the module's names and the lazily imported exploration API."
    return sorted({*globals(), *_EXPLORE})
