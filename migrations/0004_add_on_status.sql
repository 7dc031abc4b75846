-- The add-on registrations a probe may report (`portainer_status=online` and
-- `argocd_status=healthy` lines), served by GET /api/clusters/{name}/status.
ALTER TABLE clusters ADD COLUMN portainer_status TEXT NOT NULL DEFAULT 'unknown';
ALTER TABLE clusters ADD COLUMN argocd_status TEXT NOT NULL DEFAULT 'unknown';
