-- The layout the old Python backend and shell scripts created. A fresh database gets it
-- exactly, so that the old tools (sqlite3 one-liners, reconciler.sh) keep working on it.
-- Files that already hold these tables are adopted as they are (see src/store/migrate.rs).
CREATE TABLE IF NOT EXISTS clusters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL,
    provider TEXT NOT NULL,
    subnet TEXT,
    node_port INTEGER,
    pf_port INTEGER,
    http_port INTEGER,
    https_port INTEGER,
    server_ip TEXT,
    status TEXT DEFAULT 'unknown',
    desired_state TEXT DEFAULT 'present',
    actual_state TEXT DEFAULT 'unknown',
    last_reconciled_at TIMESTAMP,
    reconcile_error TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_name TEXT NOT NULL,
    operation TEXT NOT NULL,
    status TEXT NOT NULL,
    log_output TEXT,
    started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    completed_at TIMESTAMP,
    error_message TEXT
);
