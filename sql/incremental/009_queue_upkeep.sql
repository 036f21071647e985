-- qvl 009: queue upkeep. qvl.worker_status gains a heartbeat, so a worker that died without a word
-- (SIGKILL, a lost host) shows as stale (the view qvl.workers, sql/idempotent/009_*) and live workers
-- prune rows not seen for long:
--   last_seen    the worker's last heartbeat
--   heartbeat_s  how often it beats (NULL: a worker older than version 9, which does not)
ALTER TABLE qvl.worker_status ADD COLUMN last_seen timestamptz NOT NULL DEFAULT now(),
                              ADD COLUMN heartbeat_s real CHECK (heartbeat_s > 0);
COMMENT ON TABLE qvl.worker_status IS
    'qvl worker processes: paused (with the reason) while the service cannot embed; rows stay queued. '
    'last_seen: the last heartbeat; see qvl.workers for stale ones';
