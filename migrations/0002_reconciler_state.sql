-- What a level-triggered reconciler needs on top of the legacy layout.

-- The WebUI's switches, kept so that a retried create gets the same arguments.
ALTER TABLE clusters ADD COLUMN register_portainer INTEGER NOT NULL DEFAULT 1;
ALTER TABLE clusters ADD COLUMN haproxy_route INTEGER NOT NULL DEFAULT 1;
ALTER TABLE clusters ADD COLUMN register_argocd INTEGER NOT NULL DEFAULT 1;

-- generation: bumped by a trigger whenever the declared spec or desired state changes,
-- whoever writes it. observed_generation: the generation the last finished action ran for.
ALTER TABLE clusters ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
ALTER TABLE clusters ADD COLUMN observed_generation INTEGER NOT NULL DEFAULT 0;
-- Consecutive failures and when the next try is due (NULL: as soon as possible).
ALTER TABLE clusters ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE clusters ADD COLUMN next_attempt_at TIMESTAMP;
ALTER TABLE clusters ADD COLUMN last_transition_at TIMESTAMP;
-- The last action run for the cluster: tells a failed start from a failed create.
ALTER TABLE clusters ADD COLUMN last_action TEXT;
-- Node counts from the last successful probe.
ALTER TABLE clusters ADD COLUMN nodes_ready INTEGER;
ALTER TABLE clusters ADD COLUMN nodes_total INTEGER;
-- A change feed: every insert and every declared change takes the next number, so the
-- reconciler reads only rows changed since the last number it saw.
ALTER TABLE clusters ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;

UPDATE clusters SET change_seq = id;
CREATE INDEX clusters_change_seq ON clusters (change_seq);
CREATE INDEX clusters_next_attempt ON clusters (next_attempt_at) WHERE next_attempt_at IS NOT NULL;

CREATE TRIGGER clusters_inserted AFTER INSERT ON clusters
BEGIN
    UPDATE clusters
       SET change_seq = (SELECT MAX(change_seq) FROM clusters) + 1
     WHERE id = NEW.id;
END;

CREATE TRIGGER clusters_declared_change
AFTER UPDATE OF provider, subnet, node_port, pf_port, http_port, https_port,
                register_portainer, haproxy_route, register_argocd, desired_state ON clusters
WHEN OLD.provider IS NOT NEW.provider
  OR OLD.subnet IS NOT NEW.subnet
  OR OLD.node_port IS NOT NEW.node_port
  OR OLD.pf_port IS NOT NEW.pf_port
  OR OLD.http_port IS NOT NEW.http_port
  OR OLD.https_port IS NOT NEW.https_port
  OR OLD.register_portainer IS NOT NEW.register_portainer
  OR OLD.haproxy_route IS NOT NEW.haproxy_route
  OR OLD.register_argocd IS NOT NEW.register_argocd
  OR OLD.desired_state IS NOT NEW.desired_state
BEGIN
    -- A new declaration deserves a fresh start: backoff is reset.
    UPDATE clusters
       SET generation = OLD.generation + 1,
           attempts = 0,
           next_attempt_at = NULL,
           change_seq = (SELECT MAX(change_seq) FROM clusters) + 1,
           updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
     WHERE id = NEW.id;
END;

-- The history of reconcile runs; bounded by the retention settings.
CREATE TABLE reconcile_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id INTEGER NOT NULL,
    cluster_name TEXT NOT NULL,
    action TEXT NOT NULL,
    generation INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL DEFAULT 'running',
    started_at TIMESTAMP NOT NULL,
    ended_at TIMESTAMP,
    duration_ms INTEGER,
    exit_code INTEGER,
    signal INTEGER,
    error TEXT,
    output_tail TEXT,
    -- The process group and the tag its processes carry in their environment, so that a
    -- daemon restarted after a crash can find and end what the dead one left running.
    pgid INTEGER,
    process_tag TEXT
);
CREATE INDEX reconcile_runs_cluster ON reconcile_runs (cluster_id, id);
CREATE INDEX reconcile_runs_name ON reconcile_runs (cluster_name, id);
CREATE INDEX reconcile_runs_unfinished ON reconcile_runs (id) WHERE ended_at IS NULL;

-- Port lookups for the API's conflict check and port assignment.
CREATE INDEX clusters_node_port ON clusters (node_port);
CREATE INDEX clusters_pf_port ON clusters (pf_port);
CREATE INDEX clusters_http_port ON clusters (http_port);
CREATE INDEX clusters_https_port ON clusters (https_port);
CREATE INDEX clusters_created ON clusters (created_at, id);
