//! ECDSA P-256/SHA-256 verification for one public key known in advance: the PAI's.
//!
//! Every DAC is verified with its PAI's key before it is recorded (the self-check,
//! `profile::check::dac`). A general verifier (ring's) computes `u1·G + u2·Q` with a table for
//! the generator `G` but a variable-base multiplication for the key `Q`: ~80 µs on our 2-vCPU
//! machine, the largest single cost of issuing a DAC. The PAI key is fixed for the life of a
//! label, so we precompute multiples of `Q` exactly as of `G`, and the verification becomes
//! 2 × 32 additions of table points (FIPS 186-5 §6.4.2 otherwise unchanged): ~25 µs. The tables
//! take 2 × 510 KiB and ~6 ms to build, once per process for `G` and once per label for `Q`.
//!
//! Only public values pass through here (key, message, signature), so the arithmetic is
//! variable-time. Its results are cross-checked against ring and the `p256` crate in the tests.

use std::sync::OnceLock;

use p256::Scalar;
use p256::ecdsa::Signature;
use p256::elliptic_curve::ops::Reduce;

/// A field element mod p in Montgomery form (value · 2^256 mod p), little-endian 64-bit limbs,
/// always fully reduced (< p).
type Fe = [u64; 4];

/// p = 2^256 − 2^224 + 2^192 + 2^96 − 1 (FIPS 186-5 / SP 800-186 §3.2.1.3).
const P: Fe = [
    0xffff_ffff_ffff_ffff,
    0x0000_0000_ffff_ffff,
    0x0000_0000_0000_0000,
    0xffff_ffff_0000_0001,
];
/// 2^512 mod p: multiplying by it enters Montgomery form.
const R2: Fe = [
    0x0000_0000_0000_0003,
    0xffff_fffb_ffff_ffff,
    0xffff_ffff_ffff_fffe,
    0x0000_0004_ffff_fffd,
];
/// The group order n.
const N: Fe = [
    0xf3b9_cac2_fc63_2551,
    0xbce6_faad_a717_9e84,
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_0000_0000,
];
/// The curve's b (y² = x³ − 3x + b).
const B: Fe = [
    0x3bce_3c3e_27d2_604b,
    0x651d_06b0_cc53_b0f6,
    0xb3eb_bd55_7698_86bc,
    0x5ac6_35d8_aa3a_93e7,
];
const GX: Fe = [
    0xf4a1_3945_d898_c296,
    0x7703_7d81_2deb_33a0,
    0xf8bc_e6e5_63a4_40f2,
    0x6b17_d1f2_e12c_4247,
];
const GY: Fe = [
    0xcbb6_4068_37bf_51f5,
    0x2bce_3357_6b31_5ece,
    0x8ee7_eb4a_7c0f_9e16,
    0x4fe3_42e2_fe1a_7f9b,
];

/// Bits per table window: each window holds the 2^W − 1 non-zero multiples of one power of two
/// of the point; a scalar multiplication is one addition per window. Measured: 7 bits 32 µs,
/// 8 bits 25 µs per verification.
const W: usize = 8;
/// Windows that cover a 256-bit scalar.
const WINDOWS: usize = 256_usize.div_ceil(W);
const ENTRIES: usize = (1 << W) - 1;

fn adc(a: u64, b: u64, carry: u64) -> (u64, u64) {
    let t = a as u128 + b as u128 + carry as u128;
    (t as u64, (t >> 64) as u64)
}

fn sbb(a: u64, b: u64, borrow: u64) -> (u64, u64) {
    let t = (a as u128).wrapping_sub(b as u128 + borrow as u128);
    (t as u64, (t >> 127) as u64)
}

fn mac(acc: u64, a: u64, b: u64, carry: u64) -> (u64, u64) {
    let t = acc as u128 + a as u128 * b as u128 + carry as u128;
    (t as u64, (t >> 64) as u64)
}

/// `a − m` if `a` (with an extra top bit `hi`) is at least `m`, else `a`.
#[inline(always)]
fn reduce_once(a: Fe, hi: u64, m: &Fe) -> Fe {
    let mut d = [0; 4];
    let mut borrow = 0;
    for i in 0..4 {
        (d[i], borrow) = sbb(a[i], m[i], borrow);
    }
    let (_, borrow) = sbb(hi, 0, borrow);
    if borrow == 0 { d } else { a }
}

#[inline(always)]
fn add(a: &Fe, b: &Fe) -> Fe {
    let mut s = [0; 4];
    let mut carry = 0;
    for i in 0..4 {
        (s[i], carry) = adc(a[i], b[i], carry);
    }
    reduce_once(s, carry, &P)
}

#[inline(always)]
fn sub(a: &Fe, b: &Fe) -> Fe {
    let mut d = [0; 4];
    let mut borrow = 0;
    for i in 0..4 {
        (d[i], borrow) = sbb(a[i], b[i], borrow);
    }
    if borrow == 0 {
        return d;
    }
    let mut carry = 0;
    for i in 0..4 {
        (d[i], carry) = adc(d[i], P[i], carry);
    }
    d
}

/// Montgomery multiplication: a · b · 2^−256 mod p (CIOS; −p^−1 mod 2^64 = 1 for this p).
#[inline(always)]
fn mul(a: &Fe, b: &Fe) -> Fe {
    let mut t = [0u64; 6];
    for &bi in b {
        let mut carry = 0;
        for j in 0..4 {
            (t[j], carry) = mac(t[j], a[j], bi, carry);
        }
        (t[4], t[5]) = adc(t[4], carry, 0);
        let m = t[0];
        let (_, mut carry) = mac(t[0], m, P[0], 0);
        for j in 1..4 {
            (t[j - 1], carry) = mac(t[j], m, P[j], carry);
        }
        let (lo, hi) = adc(t[4], carry, 0);
        t[3] = lo;
        t[4] = t[5] + hi;
        t[5] = 0;
    }
    reduce_once([t[0], t[1], t[2], t[3]], t[4], &P)
}

#[inline(always)]
fn sqr(a: &Fe) -> Fe {
    mul(a, a)
}

fn to_mont(a: &Fe) -> Fe {
    mul(a, &R2)
}

#[cfg(test)]
fn from_mont(a: &Fe) -> Fe {
    mul(a, &[1, 0, 0, 0])
}

/// a^(p−2) = a^−1 (Fermat); only for table building, so a plain square-and-multiply.
fn invert(a: &Fe) -> Fe {
    let mut e = P;
    e[0] -= 2; // p − 2
    let mut r = to_mont(&[1, 0, 0, 0]);
    for i in (0..256).rev() {
        r = sqr(&r);
        if (e[i / 64] >> (i % 64)) & 1 == 1 {
            r = mul(&r, a);
        }
    }
    r
}

fn is_zero(a: &Fe) -> bool {
    *a == [0; 4]
}

/// Big-endian 32 bytes to limbs (no reduction).
fn limbs(bytes: &[u8; 32]) -> Fe {
    let mut l = [0; 4];
    for (i, chunk) in bytes.rchunks_exact(8).enumerate() {
        l[i] = u64::from_be_bytes(chunk.try_into().unwrap_or_default());
    }
    l
}

fn less_than(a: &Fe, m: &Fe) -> bool {
    a.iter().rev().cmp(m.iter().rev()) == std::cmp::Ordering::Less
}

/// A point in Jacobian coordinates (x = X/Z², y = Y/Z³); Z = 0 is the point at infinity.
#[derive(Clone, Copy)]
struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
}

/// An affine point (Montgomery coordinates), never the point at infinity.
#[derive(Clone, Copy, Default)]
struct Affine {
    x: Fe,
    y: Fe,
}

impl Jacobian {
    const INFINITY: Self = Self {
        x: [0; 4],
        y: [0; 4],
        z: [0; 4],
    };

    fn from_affine(p: &Affine) -> Self {
        Self {
            x: p.x,
            y: p.y,
            z: to_mont(&[1, 0, 0, 0]),
        }
    }

    fn is_infinity(&self) -> bool {
        is_zero(&self.z)
    }

    /// dbl-2001-b (a = −3), from the Explicit-Formulas Database.
    fn double(&self) -> Self {
        if self.is_infinity() || is_zero(&self.y) {
            return Self::INFINITY;
        }
        let delta = sqr(&self.z);
        let gamma = sqr(&self.y);
        let beta = mul(&self.x, &gamma);
        let t = mul(&sub(&self.x, &delta), &add(&self.x, &delta));
        let alpha = add(&add(&t, &t), &t);
        let beta4 = add(&add(&beta, &beta), &add(&beta, &beta));
        let beta8 = add(&beta4, &beta4);
        let x = sub(&sqr(&alpha), &beta8);
        let yz = add(&self.y, &self.z);
        let z = sub(&sub(&sqr(&yz), &gamma), &delta);
        let gamma2 = sqr(&gamma);
        let gamma2x4 = add(&add(&gamma2, &gamma2), &add(&gamma2, &gamma2));
        let y = sub(&mul(&alpha, &sub(&beta4, &x)), &add(&gamma2x4, &gamma2x4));
        Self { x, y, z }
    }

    /// self + q, q affine: madd-2007-bl, with the doubling and inverse cases handled.
    fn add_affine(&self, q: &Affine) -> Self {
        if self.is_infinity() {
            return Self::from_affine(q);
        }
        let z1z1 = sqr(&self.z);
        let u2 = mul(&q.x, &z1z1);
        let s2 = mul(&mul(&q.y, &self.z), &z1z1);
        let h = sub(&u2, &self.x);
        let s = sub(&s2, &self.y);
        if is_zero(&h) {
            return if is_zero(&s) {
                self.double()
            } else {
                Self::INFINITY
            };
        }
        let hh = sqr(&h);
        let i = add(&add(&hh, &hh), &add(&hh, &hh));
        let j = mul(&h, &i);
        let r = add(&s, &s);
        let v = mul(&self.x, &i);
        let x = sub(&sub(&sqr(&r), &j), &add(&v, &v));
        let yj = mul(&self.y, &j);
        let y = sub(&mul(&r, &sub(&v, &x)), &add(&yj, &yj));
        let zh = add(&self.z, &h);
        let z = sub(&sub(&sqr(&zh), &z1z1), &hh);
        Self { x, y, z }
    }
}

/// The 2^W − 1 non-zero multiples of 2^(W·i)·P for every window i, in affine form.
struct Table(Vec<[Affine; ENTRIES]>);

impl Table {
    fn new(p: &Affine) -> Self {
        let mut table = vec![[Affine::default(); ENTRIES]; WINDOWS];
        let mut base = *p;
        let mut row = vec![Jacobian::INFINITY; ENTRIES];
        for window in table.iter_mut() {
            // row[k] = (k+1)·base
            row[0] = Jacobian::from_affine(&base);
            for k in 1..ENTRIES {
                row[k] = row[k - 1].add_affine(&base);
            }
            normalise(&row, window);
            // next base = 2^W · base = (2^W − 1)·base + base
            let next = row[ENTRIES - 1].add_affine(&base);
            let mut one = [Affine::default()];
            normalise(&[next], &mut one);
            base = one[0];
        }
        Self(table)
    }

    /// Adds k·P to `acc`, k a big-endian 256-bit scalar.
    fn mul_add(&self, k: &[u8; 32], mut acc: Jacobian) -> Jacobian {
        let k = limbs(k);
        for (i, window) in self.0.iter().enumerate() {
            let bit = i * W;
            let mut digit = k[bit / 64] >> (bit % 64);
            if bit % 64 + W > 64 && bit / 64 + 1 < 4 {
                digit |= k[bit / 64 + 1] << (64 - bit % 64);
            }
            let digit = (digit & ((1 << W) - 1)) as usize;
            if digit != 0 {
                acc = acc.add_affine(&window[digit - 1]);
            }
        }
        acc
    }
}

/// Jacobian to affine for a run of points, with one inversion (Montgomery's trick). A point at
/// infinity cannot occur: the entries are k·P for 0 < k < n.
fn normalise(points: &[Jacobian], out: &mut [Affine]) {
    let mut prefix = Vec::with_capacity(points.len());
    let mut acc = to_mont(&[1, 0, 0, 0]);
    for p in points {
        prefix.push(acc);
        acc = mul(&acc, &p.z);
    }
    let mut inv = invert(&acc);
    for (i, p) in points.iter().enumerate().rev() {
        let zi = mul(&inv, &prefix[i]);
        inv = mul(&inv, &p.z);
        let zi2 = sqr(&zi);
        out[i] = Affine {
            x: mul(&p.x, &zi2),
            y: mul(&p.y, &mul(&zi2, &zi)),
        };
    }
}

fn generator_table() -> &'static Table {
    static G: OnceLock<Table> = OnceLock::new();
    G.get_or_init(|| {
        Table::new(&Affine {
            x: to_mont(&GX),
            y: to_mont(&GY),
        })
    })
}

/// Verifies ECDSA P-256/SHA-256 signatures by one public key.
pub struct FixedKeyVerifier {
    point: [u8; 65],
    table: Table,
}

impl std::fmt::Debug for FixedKeyVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedKeyVerifier")
            .field("point", &crate::asn1::hex(&self.point))
            .finish_non_exhaustive()
    }
}

impl FixedKeyVerifier {
    /// Precomputes the tables for `point` (SEC1 uncompressed); `None` if it is not a point on
    /// P-256 (SEC 1 §3.2.2.1: coordinates below p, on the curve; never infinity in this form).
    pub fn new(point: &[u8; 65]) -> Option<Self> {
        if point[0] != 4 {
            return None;
        }
        let x = limbs(point[1..33].try_into().ok()?);
        let y = limbs(point[33..].try_into().ok()?);
        if !less_than(&x, &P) || !less_than(&y, &P) {
            return None;
        }
        let (x, y) = (to_mont(&x), to_mont(&y));
        let three_x = add(&add(&x, &x), &x);
        let rhs = add(&sub(&mul(&sqr(&x), &x), &three_x), &to_mont(&B));
        if sqr(&y) != rhs {
            return None;
        }
        generator_table();
        Some(Self {
            point: *point,
            table: Table::new(&Affine { x, y }),
        })
    }

    /// The key this verifier checks signatures by.
    pub fn public_key(&self) -> &[u8; 65] {
        &self.point
    }

    /// Verifies a DER `Ecdsa-Sig-Value` over `message` (FIPS 186-5 §6.4.2).
    pub fn verify(&self, message: &[u8], der_signature: &[u8]) -> bool {
        let Ok(sig) = Signature::from_der(der_signature) else {
            return false;
        };
        let (r, s) = sig.split_scalars();
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let Ok(digest) = <[u8; 32]>::try_from(digest.as_ref()) else {
            return false;
        };
        let e = <Scalar as Reduce<p256::FieldBytes>>::reduce(&digest.into());
        let Some(w) = Option::<Scalar>::from(s.invert_vartime()) else {
            return false;
        };
        let u1: [u8; 32] = (e * w).to_bytes().into();
        let u2: [u8; 32] = (*r * w).to_bytes().into();
        let sum = self
            .table
            .mul_add(&u2, generator_table().mul_add(&u1, Jacobian::INFINITY));
        if sum.is_infinity() {
            return false;
        }
        // x(sum) mod n == r, without an inversion: X == r·Z² (mod p) for the candidates
        // x ∈ {r, r + n} that are below p.
        let r: [u8; 32] = r.to_bytes().into();
        let r = limbs(&r);
        let z2 = sqr(&sum.z);
        if mul(&to_mont(&r), &z2) == sum.x {
            return true;
        }
        let mut rn = [0; 4];
        let mut carry = 0;
        for i in 0..4 {
            (rn[i], carry) = adc(r[i], N[i], carry);
        }
        carry == 0 && less_than(&rn, &P) && mul(&to_mont(&rn), &z2) == sum.x
    }
}

impl Jacobian {
    #[cfg(test)]
    fn to_sec1(self) -> Option<[u8; 65]> {
        if self.is_infinity() {
            return None;
        }
        let mut a = [Affine::default()];
        normalise(&[self], &mut a);
        let mut out = [4u8; 65];
        for (coord, at) in [(a[0].x, 1), (a[0].y, 33)] {
            let c = from_mont(&coord);
            for i in 0..4 {
                out[at + 8 * (3 - i)..at + 8 * (4 - i)].copy_from_slice(&c[i].to_be_bytes());
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::{self, KeySigner, Signer};
    use p256::elliptic_curve::PrimeField;
    use p256::elliptic_curve::sec1::ToSec1Point;

    fn random_bytes() -> [u8; 32] {
        let mut b = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
        b
    }

    /// mul and sqr against crypto-bigint's modular multiplication: mul(a, b) · 2^256 ≡ a · b.
    #[test]
    fn field_arithmetic_matches_crypto_bigint() {
        use p256::elliptic_curve::bigint::{NonZero, U256};
        let p = NonZero::new(U256::from_words(P)).expect("p");
        let r = U256::from_words([1, 0xffff_ffff_0000_0000, u64::MAX, 0xffff_fffe]); // 2^256 mod p
        let mut p_minus_1 = P;
        p_minus_1[0] -= 1;
        let mut values = vec![[0; 4], [1, 0, 0, 0], p_minus_1, [u64::MAX, 0, 0, 0], R2];
        values.extend((0..200).map(|_| {
            let mut v = limbs(&random_bytes());
            while !less_than(&v, &P) {
                v = limbs(&random_bytes());
            }
            v
        }));
        for a in &values {
            for b in values.iter().take(40) {
                let want = U256::from_words(*a).mul_mod(&U256::from_words(*b), &p);
                let got = U256::from_words(mul(a, b)).mul_mod(&r, &p);
                assert_eq!(got, want, "mul({a:x?}, {b:x?})");
                assert!(less_than(&mul(a, b), &P));
            }
            let want = U256::from_words(*a).mul_mod(&U256::from_words(*a), &p);
            assert_eq!(
                U256::from_words(sqr(a)).mul_mod(&r, &p),
                want,
                "sqr({a:x?})"
            );
            assert!(less_than(&sqr(a), &P));
        }
    }

    #[test]
    fn montgomery_constants() {
        // R2 = (2^256 mod p) doubled 256 times.
        // 2^256 mod p = 2^256 − p: the two's complement of p's limbs.
        let mut r = [0; 4];
        let mut borrow = 0;
        for i in 0..4 {
            (r[i], borrow) = sbb(0, P[i], borrow);
        }
        for _ in 0..256 {
            r = add(&r, &r);
        }
        assert_eq!(r, R2);
        let x = limbs(&random_bytes());
        let x = reduce_once(x, 0, &P);
        assert_eq!(from_mont(&to_mont(&x)), x);
        let xm = to_mont(&x);
        if !is_zero(&x) {
            assert_eq!(mul(&xm, &invert(&xm)), to_mont(&[1, 0, 0, 0]));
        }
    }

    #[test]
    fn table_multiples_match_the_p256_crate() {
        let g = generator_table();
        for k in [[0u8; 31].as_slice(), &[1], &[2], &[0x7f], &[0x80], &[0xff]]
            .iter()
            .map(|tail| {
                let mut b = [0u8; 32];
                b[32 - tail.len()..].copy_from_slice(tail);
                b
            })
            .chain((0..64).map(|_| random_bytes()))
        {
            let scalar = Option::<Scalar>::from(Scalar::from_repr(k.into()));
            let Some(scalar) = scalar else { continue };
            let expected = (p256::ProjectivePoint::GENERATOR * scalar).to_affine();
            let ours = g.mul_add(&k, Jacobian::INFINITY).to_sec1();
            if scalar == Scalar::ZERO {
                assert!(ours.is_none());
            } else {
                assert_eq!(
                    ours.expect("k·G is finite").as_slice(),
                    expected.to_sec1_point(false).as_bytes()
                );
            }
        }
    }

    #[test]
    fn addition_handles_doubling_and_inverse() {
        let g = generator_table();
        let (one, two) = (g.0[0][0], g.0[0][1]);
        let doubled = Jacobian::from_affine(&one).add_affine(&one);
        assert_eq!(doubled.to_sec1(), Jacobian::from_affine(&two).to_sec1());
        let minus_one = Affine {
            x: one.x,
            y: sub(&[0; 4], &one.y),
        };
        assert!(
            Jacobian::from_affine(&one)
                .add_affine(&minus_one)
                .is_infinity()
        );
    }

    #[test]
    fn agrees_with_ring_on_good_and_bent_signatures() {
        let (pkcs8, point) = signer::generate_p256().expect("keygen");
        let key = KeySigner::from_pkcs8(&pkcs8).expect("key");
        let verifier = FixedKeyVerifier::new(&point).expect("tables");
        let (_, other) = signer::generate_p256().expect("keygen");
        let other = FixedKeyVerifier::new(&other).expect("tables");
        for i in 0..200u32 {
            let message = format!("tbs {i}").into_bytes();
            let sig = key.sign(&message).expect("sign");
            assert!(verifier.verify(&message, &sig));
            assert!(!verifier.verify(b"another message", &sig));
            assert!(!other.verify(&message, &sig));
            // Every byte of the signature bent: ours and ring's answers agree.
            let at = i as usize % sig.len();
            for delta in [1u8, 0x80, 0xff] {
                let mut bent = sig.clone();
                bent[at] = bent[at].wrapping_add(delta);
                assert_eq!(
                    verifier.verify(&message, &bent),
                    signer::verify(&point, &message, &bent),
                    "byte {at} + {delta:#x}"
                );
            }
        }
    }

    #[test]
    fn high_s_and_out_of_range_values() {
        let (pkcs8, point) = signer::generate_p256().expect("keygen");
        let key = KeySigner::from_pkcs8(&pkcs8).expect("key");
        let verifier = FixedKeyVerifier::new(&point).expect("tables");
        let sig = Signature::from_der(&key.sign(b"m").expect("sign")).expect("DER");
        let (r, s) = sig.split_scalars();
        // (r, n − s) is also valid ECDSA (ring accepts it too).
        let flipped = Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).expect("scalars");
        let der = flipped.to_der();
        assert!(verifier.verify(b"m", der.as_bytes()));
        assert!(signer::verify(&point, b"m", der.as_bytes()));
        // r and s must be in [1, n − 1]: zero and n itself are refused.
        let n_be: Vec<u8> = N.iter().rev().flat_map(|l| l.to_be_bytes()).collect();
        for (r, s) in [
            (vec![0u8], vec![1u8]),
            (vec![1], vec![0]),
            (n_be.clone(), vec![1]),
            (vec![1], n_be),
        ] {
            let int = |v: &[u8]| {
                let mut out = vec![0x02];
                let pad = v[0] & 0x80 != 0;
                out.push((v.len() + pad as usize) as u8);
                if pad {
                    out.push(0);
                }
                out.extend_from_slice(v);
                out
            };
            let body = [int(&r), int(&s)].concat();
            let der = [vec![0x30, body.len() as u8], body].concat();
            assert!(!verifier.verify(b"m", &der));
            assert!(!signer::verify(&point, b"m", &der));
        }
    }

    #[test]
    fn refuses_points_off_the_curve() {
        let (_, point) = signer::generate_p256().expect("keygen");
        let mut bent = point;
        bent[64] ^= 1;
        assert!(FixedKeyVerifier::new(&bent).is_none());
        let mut compressed = point;
        compressed[0] = 2;
        assert!(FixedKeyVerifier::new(&compressed).is_none());
        let mut big = point;
        big[1..33].copy_from_slice(&[0xff; 32]);
        assert!(FixedKeyVerifier::new(&big).is_none());
    }
}
