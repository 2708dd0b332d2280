//! The Merkle tree of the audit log, hashed as RFC 6962 §2.1 says (the
//! Certificate Transparency tree): a leaf is `H(0x00 || data)`, a node
//! `H(0x01 || left || right)`, a tree of `n` leaves splits at the largest
//! power of two smaller than `n`. The hash `H` is the suite's.
//!
//! [`Frontier`] keeps the roots of the perfect subtrees of the tree so far,
//! enough to append leaves and give the root at any size in `O(log n)`
//! space; [`inclusion_proof`] and [`verify_inclusion`] follow RFC 6962
//! §2.1.1 and RFC 9162 §2.1.3.2.

pub use super::crypto::Hash;
use super::crypto::Suite;

/// The hash of a leaf with these data.
pub fn leaf_hash(suite: Suite, data: &[u8]) -> Hash {
    suite.hash(&[&[0u8], data])
}

/// The hash of an interior node.
pub fn node_hash(suite: Suite, left: &Hash, right: &Hash) -> Hash {
    suite.hash(&[&[1u8], left, right])
}

/// The root of the empty tree: the hash of nothing.
pub fn empty_root(suite: Suite) -> Hash {
    suite.hash(&[])
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The root of the tree over `leaves` (leaf hashes).
pub fn root(suite: Suite, leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(suite),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(
                suite,
                &root(suite, &leaves[..k]),
                &root(suite, &leaves[k..]),
            )
        }
    }
}

/// The roots of the perfect subtrees of a tree, largest first: leaves can
/// be appended and the root taken at any time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// One hash per set bit of `size`, from the highest bit down.
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The number of leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, suite: Suite, leaf: Hash) {
        let mut node = leaf;
        // Each trailing one bit of the old size is a subtree of the same
        // height as `node`: merge them.
        let mut bits = self.size;
        while bits & 1 == 1 {
            let left = self.nodes.pop().expect("a subtree per set bit");
            node = node_hash(suite, &left, &node);
            bits >>= 1;
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// The root of the tree so far.
    pub fn root(&self, suite: Suite) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root(suite);
        };
        iter.fold(*last, |acc, left| node_hash(suite, left, &acc))
    }

    /// The frontier as bytes: the size (8 bytes big-endian) and the hashes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.nodes.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for n in &self.nodes {
            out.extend_from_slice(n);
        }
        out
    }

    /// A frontier from [`Frontier::to_bytes`]; `None` when inconsistent.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let size = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let rest = &bytes[8..];
        if !rest.len().is_multiple_of(32) || rest.len() / 32 != size.count_ones() as usize {
            return None;
        }
        let nodes = rest
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        Some(Self { size, nodes })
    }
}

/// The audit path of leaf `index` in the tree over `leaves` (RFC 6962
/// §2.1.1 `PATH(m, D[n])`), from the leaf's sibling up.
///
/// # Panics
/// If `index` is not below the number of leaves.
pub fn inclusion_proof(suite: Suite, leaves: &[Hash], index: u64) -> Vec<Hash> {
    let n = leaves.len() as u64;
    assert!(index < n, "leaf {index} of a tree of {n}");
    if n == 1 {
        return Vec::new();
    }
    let k = split(n);
    let k_us = k as usize;
    if index < k {
        let mut p = inclusion_proof(suite, &leaves[..k_us], index);
        p.push(root(suite, &leaves[k_us..]));
        p
    } else {
        let mut p = inclusion_proof(suite, &leaves[k_us..], index - k);
        p.push(root(suite, &leaves[..k_us]));
        p
    }
}

/// Whether `proof` shows the leaf hash `leaf` at `index` in the tree of
/// `size` leaves with root `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    suite: Suite,
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(suite, p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(suite, &r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Suite = Suite::Sha256Ed25519;

    /// The RFC 6962 test vectors of the Certificate Transparency reference
    /// implementation: eight leaves and the root of every prefix.
    const DATA: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Hash> {
        DATA.iter()
            .map(|d| leaf_hash(S, &hex::decode(d).unwrap()))
            .collect()
    }

    #[test]
    fn roots_match_rfc6962_test_vectors() {
        let leaves = leaves();
        let mut frontier = Frontier::default();
        assert_eq!(hex::encode(frontier.root(S)), ROOTS[0]);
        for n in 0..=8 {
            assert_eq!(hex::encode(root(S, &leaves[..n])), ROOTS[n], "size {n}");
            if n > 0 {
                frontier.push(S, leaves[n - 1]);
                assert_eq!(hex::encode(frontier.root(S)), ROOTS[n], "frontier {n}");
                let back = Frontier::from_bytes(&frontier.to_bytes()).unwrap();
                assert_eq!(back, frontier);
            }
        }
    }

    #[test]
    fn inclusion_proofs_match_rfc6962_test_vectors() {
        let leaves = leaves();
        let cases: [(u64, [&str; 3]); 2] = [
            (
                0,
                [
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                [
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        let root8 = root(S, &leaves);
        for (index, expected) in cases {
            let proof = inclusion_proof(S, &leaves, index);
            let hexes: Vec<String> = proof.iter().map(hex::encode).collect();
            assert_eq!(hexes, expected, "leaf {index}");
            assert!(verify_inclusion(
                S,
                &leaves[index as usize],
                index,
                8,
                &proof,
                &root8
            ));
        }
    }

    #[test]
    fn every_proof_verifies_and_wrong_ones_do_not() {
        for suite in [Suite::Sha256Ed25519, Suite::Sm3Sm2] {
            let leaves: Vec<Hash> = (0u8..37).map(|i| leaf_hash(suite, &[i, i ^ 7])).collect();
            let mut frontier = Frontier::default();
            for n in 1..=leaves.len() {
                frontier.push(suite, leaves[n - 1]);
                let r = root(suite, &leaves[..n]);
                assert_eq!(frontier.root(suite), r);
                for i in 0..n as u64 {
                    let p = inclusion_proof(suite, &leaves[..n], i);
                    let leaf = &leaves[i as usize];
                    assert!(verify_inclusion(suite, leaf, i, n as u64, &p, &r));
                    assert!(!verify_inclusion(suite, leaf, i + 1, n as u64, &p, &r));
                    if n > 1 {
                        let other = &leaves[(i as usize + 1) % n];
                        assert!(!verify_inclusion(suite, other, i, n as u64, &p, &r));
                        let mut bad = p.clone();
                        bad[0][0] ^= 1;
                        assert!(!verify_inclusion(suite, leaf, i, n as u64, &bad, &r));
                    }
                }
            }
        }
    }
}
