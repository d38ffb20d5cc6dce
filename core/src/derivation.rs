//! Derivations (`.drv` files): push parser, byte-exact printer,
//! `hashDerivationModulo` and output path computation. (Being written.)
