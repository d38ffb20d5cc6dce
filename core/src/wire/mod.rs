//! The worker protocol's codec, protocol 0x164. (Being written.)
