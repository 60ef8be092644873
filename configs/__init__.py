"""The registries that ship with featcache (installed as ``featcache._configs``; see featcache.config)."""
