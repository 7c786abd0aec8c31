//! tessera server library
