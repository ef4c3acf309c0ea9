"""``ddpm cache build|list|clear``: the disk cache of decoded data sets."""

from __future__ import annotations

import argparse


def cache(args: argparse.Namespace) -> int:
    from ddpmkit.data.cache import DataCache, build_entry

    store = DataCache()
    if args.cache_command == "build":
        print(build_entry(args.config, args.overrides, args.data, progress=not args.no_progress))
        return 0
    entries = store.entries()
    if args.cache_command == "list":
        print("\n".join(store.describe(e) for e in entries) or f"the cache {store.root} is empty")
        return 0
    chosen = [e for e in entries if not args.sources or store.matches(e, args.sources)]
    for entry in chosen:
        store.remove(entry)
        print(f"removed {entry.meta['source']} ({entry.nbytes / 2**20:.1f} MiB, {entry.path})")
    if args.sources and not chosen:
        print(f"no cache entry of {', '.join(args.sources)} in {store.root}")
    return 0
