-- Email addresses are stored in one canonical form (NFKC, lower case, the domain in its IDNA
-- ASCII form); auth-service brings older rows to it at start. Two accounts whose addresses turn
-- out to be the same are never merged or deleted automatically: both are left as they are and
-- listed here for an operator to resolve (e.g. by contacting the owners, then deleting one).
CREATE TABLE email_conflicts (
    user_id UUID PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    -- The address the account would have in canonical form, already held by another account.
    canonical_email VARCHAR(255) NOT NULL,
    other_user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    found_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
