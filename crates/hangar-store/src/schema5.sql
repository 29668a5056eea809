-- Migration 5: machines get an address of their own. With the runc driver
-- each machine has its own network namespace and IPv4 address, and the
-- proxy and health checks dial `address:port`; machines made before this
-- (and those of the process driver) listen on the host's loopback.
ALTER TABLE machines ADD COLUMN address TEXT NOT NULL DEFAULT '127.0.0.1';
