"""Search: index extraction at write time, query parsing, per-store compilation, paging."""
