-- Each device's last successful sync, to the minute (RFC 3339, UTC), for the admin's
-- device list: a workstation that stopped syncing shows.
ALTER TABLE devices ADD COLUMN last_sync TEXT;
