//! Golden vectors from the real Guix 1.5.0 client, reproduced by the core.
