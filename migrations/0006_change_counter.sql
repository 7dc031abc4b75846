-- The change feed's numbers come from one counter that only grows: every declaration (by
-- kindler's API, by sqlite3, by the old scripts) takes the next value, and the reconciler
-- reads rows whose change_seq lies between its cursor and the counter.
--
-- Before, a new number was "one above the highest change_seq of any row", so one odd value
-- another program wrote into a row's change_seq decided every later number: with 'abc'
-- (text sorts above every number) the next number became 1, below the reconciler's
-- cursor, and no declaration was acted on until a restart. Now a value kindler did not hand
-- out affects nothing: it is above the counter (text and blobs always are), or below the
-- cursor, and the reader never passes the counter.

UPDATE change_counter
   SET value = MAX(value, COALESCE((SELECT MAX(change_seq) FROM clusters
                                     WHERE typeof(change_seq) = 'integer'
                                       AND change_seq BETWEEN 0 AND 4611686018427387904), 0));

DROP TRIGGER clusters_deleted;
DROP TRIGGER clusters_inserted;
DROP TRIGGER clusters_declared_change;
DROP VIEW next_change_seq;

-- Rows other programs insert get the next number; kindler's own insert takes it itself
-- (advancing the counter and writing that value, never 0), so its rows are not rewritten.
-- (The reconciler also rereads every row once per resync interval, which covers a row
-- another program inserts with exactly the counter's value.)
CREATE TRIGGER clusters_inserted AFTER INSERT ON clusters
WHEN NEW.change_seq = 0 OR NEW.change_seq IS NOT (SELECT value FROM change_counter)
BEGIN
    UPDATE change_counter SET value = value + 1;
    UPDATE clusters SET change_seq = (SELECT value FROM change_counter) WHERE id = NEW.id;
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
    UPDATE change_counter SET value = value + 1;
    UPDATE clusters
       SET generation = OLD.generation + 1,
           attempts = 0,
           next_attempt_at = NULL,
           change_seq = (SELECT value FROM change_counter),
           updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
     WHERE id = NEW.id;
END;
