-- Leases (issue 27): which node answers an accepted message, and until when. A node leases a message when
-- it stores it and renews the lease while it answers; once the lease has run out, any node may claim it
-- (`FOR UPDATE SKIP LOCKED`, so two nodes claiming at once take different rows).
ALTER TABLE inbound ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE inbound ADD COLUMN lease_until_ms BIGINT NOT NULL DEFAULT 0;
