//! Loading real files, and the clear errors bad files get.
