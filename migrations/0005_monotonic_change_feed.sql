-- The change feed's numbers must only grow. They were "highest change_seq + 1", so a
-- deleted row holding the highest number handed it out again, below the reconciler's
-- cursor: the next declarations went unnoticed until a restart. A one-row table keeps the
-- highest number a deleted row held (written on delete, by anyone: a trigger), and new
-- numbers are one above both it and every row's. Deletes are rare; inserts and
-- declarations only read it.
CREATE TABLE change_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO change_counter (id, value) SELECT 1, COALESCE(MAX(change_seq), 0) FROM clusters;

CREATE TRIGGER clusters_deleted AFTER DELETE ON clusters
BEGIN
    UPDATE change_counter SET value = OLD.change_seq WHERE value < OLD.change_seq;
END;

-- The next change number (used by the triggers below and by kindler's own insert).
CREATE VIEW next_change_seq AS
SELECT MAX(COALESCE((SELECT MAX(change_seq) FROM clusters), 0),
           (SELECT value FROM change_counter)) + 1 AS value;

DROP TRIGGER clusters_inserted;
CREATE TRIGGER clusters_inserted AFTER INSERT ON clusters
WHEN NEW.change_seq = 0
BEGIN
    UPDATE clusters SET change_seq = (SELECT value FROM next_change_seq) WHERE id = NEW.id;
END;

DROP TRIGGER clusters_declared_change;
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
           change_seq = (SELECT value FROM next_change_seq),
           updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
     WHERE id = NEW.id;
END;
