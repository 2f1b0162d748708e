-- One sender per attempt: a delivery process claims attempt n of a delivery before it sends a
-- retry or a redelivered task, so two copies of one task (a retry scheduled twice after a lost
-- ack, a chunk republished after a broker outage) never send the same attempt twice while the
-- claimer lives. The claim lapses at claim_until, so a claimer that died is replaced.
-- Nullable without a default: adding them rewrites no partition.
ALTER TABLE deliveries ADD COLUMN claimed_attempt integer, ADD COLUMN claim_until timestamptz;
