__version__ = "0.1.0"

_EXPLORE = ("load_run", "runs", "Run")

def __getattr__(name):
    "`sdlms.load_run`, `sdlms.rundir`, `sdlms.Run`: the exploration API (`sdlms.explore`), imported on first use."
    if name in _EXPLORE:
        from sdlms import explore
        return getattr(explore, name)
    raise AttributeError(f"module 'sdlms' has no attribute {name!r}")
