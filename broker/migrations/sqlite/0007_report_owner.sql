-- The client whose report it is (its certificate identity, or the peer
-- address in the plaintext mode): only it may read the report again.
-- Reports stored before this column have no owner and are readable only
-- in the plaintext development mode.
ALTER TABLE reports ADD COLUMN owner TEXT NOT NULL DEFAULT '';
