-- The trial scheduler looks for trialing subscriptions whose trial has
-- ended ('' unless the subscription is trialing). No subscription trialed
-- before this column existed, so every existing row is right with ''.
ALTER TABLE rm_subscriptions ADD COLUMN trial_end TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS rm_subscriptions_trial_end_idx ON rm_subscriptions (trial_end);
