-- Who holds an event's fan-out claim: the token of the message being worked on. The same
-- holder may claim again at once after a failed step (a database outage interrupted it);
-- anyone else waits for the claim to lapse.
ALTER TABLE events ADD COLUMN fanout_holder uuid;
