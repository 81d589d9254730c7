//! What each socket's paths answer. `guest` is the API containers see.

pub mod guest;
