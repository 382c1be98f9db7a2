//! What a shared photo may be: a JPEG or PNG that is well formed as far as its container goes,
//! and carries nothing but pixels — no EXIF (camera, time, GPS position), XMP, IPTC/Photoshop
//! blocks, comments or text chunks. The sender's page strips them (it redraws the picture);
//! this is the server's check that it did, so a hostile or buggy client cannot pass a
//! patient's position on. Uses only the standard library (a fuzz target compiles it alone).

/// The formats taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    Png,
}

impl ImageKind {
    pub fn mime(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefusal {
    #[error("not a JPEG or PNG image")]
    NotAnImage,
    #[error("the image is cut short or malformed ({0})")]
    Malformed(&'static str),
    #[error("the image carries metadata ({0}); send the picture without it")]
    HasMetadata(&'static str),
    #[error(
        "the picture is {0}×{1} pixels; at most {side} on a side and {mp} megapixels",
        side = MAX_SIDE,
        mp = MAX_PIXELS / 1_000_000
    )]
    TooManyPixels(u32, u32),
}

/// The largest picture taken: every recipient's browser decodes it in full (4 bytes a pixel)
/// as it arrives, and a small file can hold a huge picture of one colour — a phone's tab would
/// hang or die, and its call with it. The sender's page scales photos to 2,560 px.
pub const MAX_SIDE: u32 = 4096;
pub const MAX_PIXELS: u64 = 12_000_000;

fn size_allowed(width: u32, height: u32) -> Result<(), ImageRefusal> {
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageRefusal::TooManyPixels(width, height));
    }
    Ok(())
}

impl ImageRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            ImageRefusal::NotAnImage => "image_not_supported",
            ImageRefusal::Malformed(_) => "image_malformed",
            ImageRefusal::HasMetadata(_) => "image_has_metadata",
            ImageRefusal::TooManyPixels(..) => "image_too_many_pixels",
        }
    }
}

/// Checks `bytes`; the kind when it is a clean JPEG or PNG.
pub fn inspect(bytes: &[u8]) -> Result<ImageKind, ImageRefusal> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg(bytes).map(|()| ImageKind::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png(bytes).map(|()| ImageKind::Png)
    } else {
        Err(ImageRefusal::NotAnImage)
    }
}

/// Walks every segment to the end: only what draws the picture is allowed — frame, scan,
/// tables, restart markers, and of the application blocks only JFIF (APP0), an ICC colour
/// profile (APP2) and Adobe's colour transform (APP14). Anything else — EXIF or XMP (APP1),
/// other application blocks, comments, a second image — is refused, before or after the
/// first scan (progressive JPEGs have several), and nothing may follow the end marker.
fn jpeg(bytes: &[u8]) -> Result<(), ImageRefusal> {
    let mut at = 2;
    let mut frame = false;
    let mut scanned = false;
    loop {
        // Fill bytes (0xFF) may pad between segments.
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(at), bytes.get(at + 1)) else {
            return Err(ImageRefusal::Malformed("a segment marker is missing"));
        };
        at += 2;
        match marker {
            0xD9 if scanned && at == bytes.len() => return Ok(()),
            0xD9 if scanned => return Err(ImageRefusal::Malformed("data after the image's end")),
            0xD9 => return Err(ImageRefusal::Malformed("the image ends before its data")),
            0xD0..=0xD7 | 0x01 => continue,
            0xD8 => return Err(ImageRefusal::HasMetadata("a second image")),
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(at), bytes.get(at + 1)) else {
            return Err(ImageRefusal::Malformed("a segment is cut short"));
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len < 2 || at + len > bytes.len() {
            return Err(ImageRefusal::Malformed(
                "a segment's length runs past the end",
            ));
        }
        let body = &bytes[at + 2..at + len];
        match marker {
            0xE0 if body.starts_with(b"JFIF\0") => {}
            0xE2 if body.starts_with(b"ICC_PROFILE\0") => {}
            0xEE if body.starts_with(b"Adobe") => {}
            0xE1 if body.starts_with(b"Exif\0") => return Err(ImageRefusal::HasMetadata("EXIF")),
            0xE1 if body.starts_with(b"http://ns.adobe.com/xap/1.0/") => {
                return Err(ImageRefusal::HasMetadata("XMP"));
            }
            0xE1 => return Err(ImageRefusal::HasMetadata("an APP1 block")),
            0xED => return Err(ImageRefusal::HasMetadata("IPTC/Photoshop")),
            0xFE => return Err(ImageRefusal::HasMetadata("a comment")),
            0xE0..=0xEF => return Err(ImageRefusal::HasMetadata("an application block")),
            // Start of frame (baseline, progressive, …): the picture's size.
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                if body.len() < 5 || body[1..5].iter().all(|b| *b == 0) {
                    return Err(ImageRefusal::Malformed("the frame has no size"));
                }
                // Precision, then height and width.
                size_allowed(
                    u32::from(u16::from_be_bytes([body[3], body[4]])),
                    u32::from(u16::from_be_bytes([body[1], body[2]])),
                )?;
                frame = true;
            }
            // Huffman and quantisation tables, arithmetic conditioning, restart interval,
            // number of lines.
            0xC4 | 0xCC | 0xDB | 0xDD | 0xDC => {}
            0xDA => {
                if !frame {
                    return Err(ImageRefusal::Malformed(
                        "image data before the frame header",
                    ));
                }
                scanned = true;
                // The entropy-coded data runs to the next marker that is not a stuffed 0x00 or
                // a restart.
                let mut i = at + len;
                loop {
                    match (bytes.get(i), bytes.get(i + 1)) {
                        (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => i += 2,
                        (Some(0xFF), Some(_)) => break,
                        (Some(_), _) => i += 1,
                        (None, _) => return Err(ImageRefusal::Malformed("the image does not end")),
                    }
                }
                at = i;
                continue;
            }
            _ => return Err(ImageRefusal::HasMetadata("an unknown block")),
        }
        at += len;
    }
}

/// Walks the chunks: only those that draw the picture are allowed (header, palette, data,
/// transparency, colour space, gamma, pixel size, background, significant bits); text,
/// EXIF, time, profiles with names and private chunks are refused. The image must end with an
/// empty IEND and nothing after it.
fn png(bytes: &[u8]) -> Result<(), ImageRefusal> {
    let mut at = 8;
    let mut header = false;
    loop {
        let Some(head) = bytes.get(at..at + 8) else {
            return Err(ImageRefusal::Malformed("a chunk is cut short"));
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        let end = at
            .checked_add(12)
            .and_then(|x| x.checked_add(len))
            .filter(|e| *e <= bytes.len())
            .ok_or(ImageRefusal::Malformed(
                "a chunk's length runs past the end",
            ))?;
        match kind {
            b"IHDR" if !header => {
                header = len == 13;
                if header {
                    let word = |i: usize| {
                        u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
                    };
                    size_allowed(word(at + 8), word(at + 12))?;
                }
            }
            _ if !header => return Err(ImageRefusal::Malformed("no image header first")),
            b"IEND" => {
                return if len != 0 {
                    Err(ImageRefusal::Malformed("the end chunk holds data"))
                } else if end != bytes.len() {
                    Err(ImageRefusal::Malformed("data after the image's end"))
                } else {
                    Ok(())
                };
            }
            b"PLTE" | b"IDAT" | b"tRNS" | b"sRGB" | b"gAMA" | b"cHRM" | b"pHYs" | b"bKGD"
            | b"sBIT" => {}
            b"tEXt" | b"zTXt" | b"iTXt" => return Err(ImageRefusal::HasMetadata("a text chunk")),
            b"eXIf" | b"exIf" | b"zxIf" => return Err(ImageRefusal::HasMetadata("EXIF")),
            b"tIME" => return Err(ImageRefusal::HasMetadata("a time stamp")),
            _ => return Err(ImageRefusal::HasMetadata("an unknown chunk")),
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal baseline JPEG's structure (SOI, APP0, SOF0, SOS, data, EOI) with `extra`
    /// segments after the APP0.
    fn jpeg_with(extra: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        let seg = |b: &mut Vec<u8>, marker: u8, body: &[u8]| {
            b.extend_from_slice(&[0xFF, marker]);
            b.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
            b.extend_from_slice(body);
        };
        seg(&mut b, 0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        for (m, body) in extra {
            seg(&mut b, *m, body);
        }
        seg(&mut b, 0xC0, &[8, 0, 16, 0, 16, 1, 1, 0x11, 0]);
        seg(&mut b, 0xDA, &[1, 1, 0, 0, 63, 0]);
        b.extend_from_slice(&[0x12, 0x34, 0xFF, 0x00, 0x56]);
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    }

    fn png_with(extra: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        let chunk = |b: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]| {
            b.extend_from_slice(&(body.len() as u32).to_be_bytes());
            b.extend_from_slice(kind);
            b.extend_from_slice(body);
            b.extend_from_slice(&[0, 0, 0, 0]);
        };
        chunk(&mut b, b"IHDR", &[0, 0, 0, 16, 0, 0, 0, 16, 8, 2, 0, 0, 0]);
        for (k, body) in extra {
            chunk(&mut b, k, body);
        }
        chunk(&mut b, b"IDAT", &[1, 2, 3]);
        chunk(&mut b, b"IEND", &[]);
        b
    }

    #[test]
    fn a_clean_picture_passes() {
        assert_eq!(inspect(&jpeg_with(&[])), Ok(ImageKind::Jpeg));
        assert_eq!(
            inspect(&jpeg_with(&[(0xE2, b"ICC_PROFILE\0\x01\x01")])),
            Ok(ImageKind::Jpeg)
        );
        assert_eq!(inspect(&png_with(&[])), Ok(ImageKind::Png));
    }

    /// A small file can hold a huge picture (compressed zeros) that every recipient's browser
    /// would decode in full: refused by its header, before anyone fetches it.
    #[test]
    fn a_picture_too_big_to_decode_is_refused_by_its_header() {
        let jpeg = |w: u16, h: u16| {
            let mut b = jpeg_with(&[]);
            let sof = b.windows(2).position(|x| x == [0xFF, 0xC0]).unwrap();
            b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
            b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
            inspect(&b)
        };
        let png = |w: u32, h: u32| {
            let mut b = png_with(&[]);
            b[16..20].copy_from_slice(&w.to_be_bytes());
            b[20..24].copy_from_slice(&h.to_be_bytes());
            inspect(&b)
        };
        assert_eq!(jpeg(2560, 1920), Ok(ImageKind::Jpeg));
        assert_eq!(png(2560, 1920), Ok(ImageKind::Png));
        assert_eq!(png(4096, 2048), Ok(ImageKind::Png));
        for (w, h) in [(20_000, 20_000), (4097, 10), (10, 4097), (4000, 4000)] {
            assert_eq!(png(w, h), Err(ImageRefusal::TooManyPixels(w, h)), "{w}×{h}");
            assert_eq!(
                jpeg(w.min(65_535) as u16, h.min(65_535) as u16),
                Err(ImageRefusal::TooManyPixels(w, h)),
                "{w}×{h}"
            );
        }
        let refused = png(20_000, 20_000).unwrap_err();
        assert_eq!(refused.code(), "image_too_many_pixels");
        assert!(
            refused
                .to_string()
                .contains("at most 4096 on a side and 12 megapixels")
        );
    }

    #[test]
    fn metadata_is_named_and_refused() {
        let gps = b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x88\x25\0\x04\0\0\0\x01\0\0\0\x1a";
        for (segment, what) in [
            ((0xE1, &gps[..]), "EXIF"),
            (
                (0xE1, &b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>"[..]),
                "XMP",
            ),
            ((0xED, &b"Photoshop 3.0\0"[..]), "IPTC/Photoshop"),
            ((0xFE, &b"taken at home"[..]), "a comment"),
        ] {
            assert_eq!(
                inspect(&jpeg_with(&[segment])),
                Err(ImageRefusal::HasMetadata(what))
            );
        }
        for (chunk, what) in [
            ((b"tEXt", &b"Author\0Anna"[..]), "a text chunk"),
            ((b"eXIf", &gps[6..]), "EXIF"),
            ((b"tIME", &[7, 234, 5, 17, 12, 0, 0][..]), "a time stamp"),
        ] {
            assert_eq!(
                inspect(&png_with(&[chunk])),
                Err(ImageRefusal::HasMetadata(what))
            );
        }
    }

    #[test]
    fn only_what_draws_the_picture_passes_anywhere_in_the_file() {
        // After the first scan of a progressive JPEG, an EXIF block is still refused.
        let mut late = jpeg_with(&[]);
        let n = late.len();
        let exif = [&[0xFF, 0xE1, 0, 8][..], b"Exif\0\0"].concat();
        late.splice(n - 2..n - 2, exif);
        assert_eq!(inspect(&late), Err(ImageRefusal::HasMetadata("EXIF")));
        // A second image after the end, and unknown application data in APP0/APP2.
        let mut twice = jpeg_with(&[]);
        twice.extend_from_slice(&jpeg_with(&[]));
        assert!(inspect(&twice).is_err());
        assert!(inspect(&jpeg_with(&[(0xE2, b"MPF\0\x01")])).is_err());
        assert!(inspect(&jpeg_with(&[(0xE0, b"JFXX\0\x10")])).is_err());
        // PNG: unknown and private chunks (C2PA manifests, old EXIF) are refused too.
        for kind in [b"caBX", b"exIf", b"iCCP", b"prVt"] {
            assert!(inspect(&png_with(&[(kind, b"x")])).is_err(), "{kind:?}");
        }
        assert_eq!(
            inspect(&png_with(&[(b"pHYs", &[0, 0, 11, 19, 0, 0, 11, 19, 1])])),
            Ok(ImageKind::Png)
        );
    }

    #[test]
    fn anything_else_is_refused_without_panicking() {
        assert_eq!(inspect(b"GIF89a"), Err(ImageRefusal::NotAnImage));
        assert_eq!(inspect(b""), Err(ImageRefusal::NotAnImage));
        let good = jpeg_with(&[]);
        for cut in 3..good.len() - 1 {
            assert!(inspect(&good[..cut]).is_err(), "cut at {cut}");
        }
        let good = png_with(&[]);
        for cut in 9..good.len() {
            assert!(inspect(&good[..cut]).is_err(), "cut at {cut}");
        }
        // Found by the fuzz target: an end chunk with data in it.
        let mut fat_end = png_with(&[]);
        let n = fat_end.len();
        fat_end.splice(n - 12..n - 8, 4u32.to_be_bytes());
        fat_end.splice(n - 4..n - 4, *b"))))");
        assert!(inspect(&fat_end).is_err());
        let mut huge = png_with(&[]);
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(inspect(&huge).is_err());
    }
}
