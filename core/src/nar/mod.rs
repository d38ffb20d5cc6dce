//! NAR ("nix-archive-1"): the streaming parser, the streaming writer and
//! NAR hashing. (Being written.)
