-- Fewer pages written per declaration: the list is ordered in memory (and its answer is
-- cached), so created_at needs no index; kindler's own inserts number their change
-- themselves, so the insert trigger only fills in change_seq for rows other programs add.
DROP INDEX IF EXISTS clusters_created;

DROP TRIGGER clusters_inserted;
CREATE TRIGGER clusters_inserted AFTER INSERT ON clusters
WHEN NEW.change_seq = 0
BEGIN
    UPDATE clusters
       SET change_seq = (SELECT MAX(change_seq) FROM clusters) + 1
     WHERE id = NEW.id;
END;
