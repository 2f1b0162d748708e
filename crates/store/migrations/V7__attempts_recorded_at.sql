-- When each attempt row was written, under its webhook's row lock: the order in which the
-- disable rule saw the attempts of one webhook (it follows their start times, but can only
-- take an attempt into account once its record is there). Audits replay the rule in this
-- order. No default for rows from before (a volatile default would rewrite the table).
ALTER TABLE delivery_attempts ADD COLUMN recorded_at timestamptz;
ALTER TABLE delivery_attempts ALTER COLUMN recorded_at SET DEFAULT clock_timestamp();
