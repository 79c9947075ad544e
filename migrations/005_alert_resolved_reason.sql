-- Why a resolved alert resolved: its series recovered, went stale (stopped reporting: a worker
-- that left, a metric no longer sent), or a command resolved it. NULL while not resolved.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS resolved_reason text
    CHECK (resolved_reason IN ('recovered', 'stale', 'manual'));
