//! Board profiles and their sensor/IO drivers.
