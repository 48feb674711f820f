DROP TABLE email_conflicts;
