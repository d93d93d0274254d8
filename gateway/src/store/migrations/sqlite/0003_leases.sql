-- Leases (issue 27): which node answers an accepted message, and until when. A node leases a message when
-- it stores it and renews the lease while it answers; once the lease has run out, any node may claim it.
ALTER TABLE inbound ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE inbound ADD COLUMN lease_until_ms INTEGER NOT NULL DEFAULT 0;
