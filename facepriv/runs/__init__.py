"""What makes a run a run, without Ray: `lock` (one run per DST: a lease that renews itself),
`incremental` (the compacted manifest and the skip rule), `progress` (bar and log lines),
`memory` (heap trimming between batches).
"""
