;;; encodings.scm -- nix-base32/base16 and digest vectors (no daemon needed).
;;;
;;; Writes the JSON object described under "encodings.json" in README.md.
;;; Every value comes from (guix base32), (guix base16) and (gcrypt hash).

(load (string-append (dirname (current-filename)) "/common.scm"))

(define (iota-bytes n start)
  (u8-list->bytevector (map (lambda (i) (modulo (+ start i) 256)) (iota n))))

(define %byte-strings
  ;; Lengths 0..8 exercise every quintet alignment; 20 and 32 are the
  ;; compressed store-path hash and SHA-256 sizes; 64 is SHA-512.
  (list (make-bytevector 0)
        #vu8(0) #vu8(1) #vu8(31) #vu8(32) #vu8(255)
        #vu8(0 0) #vu8(255 255) #vu8(1 2 3)
        (iota-bytes 4 1) (iota-bytes 5 1) (iota-bytes 6 250) (iota-bytes 7 9)
        (iota-bytes 8 100)
        (iota-bytes 20 0) (make-bytevector 20 255) (make-bytevector 20 0)
        (iota-bytes 32 0) (sha256 (make-bytevector 0))
        (sha256 (utf8 "hello")) (iota-bytes 64 128)))

(define %invalid-base32
  ;; Strings with a character outside the nix-base32 alphabet.
  '("e" "0o" "tu" "0000000000000000000000000000000E" "00000000000000000000000000000-00"))

(define %hash-inputs
  (list (make-bytevector 0)
        (utf8 "abc")
        (utf8 "hello world\n")
        (utf8 "The quick brown fox jumps over the lazy dog")
        (pattern-bytes 1000 (iota-bytes 251 0))
        (make-bytevector 1 0)))

(define (base32-case bv)
  `(("bytes_hex" . ,(hex bv))
    ("nix_base32" . ,(bytevector->nix-base32-string bv))
    ("base16" . ,(bytevector->base16-string bv))))

(define (invalid-case s)
  `(("nix_base32" . ,s)
    ("accepted" . ,(guard (c (#t #f))
                     (nix-base32-string->bytevector s)
                     #t))))

(define (roundtrip-check bv)
  (unless (equal? bv (nix-base32-string->bytevector
                      (bytevector->nix-base32-string bv)))
    (error "nix-base32 round trip failed" bv))
  (unless (equal? bv (base16-string->bytevector (bytevector->base16-string bv)))
    (error "base16 round trip failed" bv)))

(define (hash-case bv)
  `(("input_hex" . ,(hex bv))
    ("digests"
     . ,(arr (map (lambda (algo)
                    (let ((d (digest algo bv)))
                      `(("algo" . ,(symbol->string algo))
                        ("hex" . ,(hex d))
                        ("nix_base32" . ,(bytevector->nix-base32-string d)))))
                  %algorithms)))))

(for-each roundtrip-check %byte-strings)

(write-json!
 `(("base32" . ,(arr (map base32-case %byte-strings)))
   ("base32_invalid" . ,(arr (map invalid-case %invalid-base32)))
   ("hashes" . ,(arr (map hash-case %hash-inputs)))))
