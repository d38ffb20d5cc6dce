;;; nar.scm -- NAR serialisation vectors, checked against the daemon.
;;;
;;; For each sample tree: the NAR written by (guix serialization)
;;; `write-file', its size and SHA-256; then the same tree added to the daemon
;;; (add-to-store, recursive, sha256), its path info (NAR hash and size) and
;;; its unsigned export, whose NAR part must equal the client's NAR.  Writes
;;; the JSON object described under "nar.json" in README.md.

(load (string-append (dirname (current-filename)) "/common.scm"))

(define store (connect))

(define (iota-bytes n)
  (u8-list->bytevector (map (cut modulo <> 256) (iota n))))

(define %large-size
  ;; A bit more than 1 MiB and not a multiple of 8, so the padding shows.
  (+ (* 1024 1024) 13))

(define %cases
  ;; (NAME TREE FULL-BYTES?): FULL-BYTES? says whether the NAR and export
  ;; bytes are recorded in full.
  `(("empty-file" (regular ,(make-bytevector 0)) #t)
    ("one-byte" (regular ,(utf8 "a")) #t)
    ("eight-bytes" (regular ,(utf8 "abcdefgh")) #t)
    ("nine-bytes" (regular ,(utf8 "abcdefghi")) #t)
    ("binary" (regular ,(iota-bytes 256)) #t)
    ("executable" (executable ,(utf8 "#!/bin/sh\necho hi\n")) #t)
    ("empty-executable" (executable ,(make-bytevector 0)) #t)
    ("symlink" (symlink "target/of/the-link") #t)
    ("symlink-dotdot" (symlink "../x") #t)
    ("empty-dir" (directory) #t)
    ("nested"
     (directory
      ;; Declared out of order; NAR order is bytewise:
      ;; "B" < "Z" < "a" < "a-b" < "a.b" < "a0" < "b" < "\u00e9".
      ("a.b" (regular ,(utf8 "dot")))
      ("B" (regular ,(utf8 "upper")))
      ("a" (directory
            ("z" (symlink "../B"))
            ("deeper" (directory
                       ("file" (regular ,(utf8 "deep\n")))
                       ("empty" (directory))))
            ("exe" (executable ,(utf8 "#!/bin/sh\n")))))
      ("a-b" (regular ,(utf8 "dash")))
      ("\u00e9" (regular ,(utf8 "utf-8 name")))
      ("Z" (symlink "a"))
      ("a0" (regular ,(make-bytevector 0)))
      ("b" (executable ,(utf8 "bee"))))
     #t)
    ("large" (pattern ,%large-size ,(u8-list->bytevector (iota 251)) #f) #f)))

(define (case->json entry)
  (match entry
    ((name tree full?)
     (let* ((file (materialise tree))
            (nar (nar-bytes file))
            (nar-size (bytevector-length nar))
            (nar-hash (sha256 nar))
            (path (add-to-store store name #t "sha256" file))
            (info (query-path-info store path))
            (export (export-bytes store path))
            (exported-nar (and (>= (bytevector-length export) (+ 8 nar-size))
                               (bytevector-slice export 8 nar-size)))
            (agrees? (and (equal? (path-info-hash info) nar-hash)
                          (= (path-info-nar-size info) nar-size)
                          (equal? exported-nar nar)
                          (string=? path (fixed-output-path name nar-hash)))))
       `(("name" . ,name)
         ("tree" . ,(tree->json tree))
         ("nar_size" . ,nar-size)
         ("nar_sha256_hex" . ,(hex nar-hash))
         ("nar_sha256_nix_base32" . ,(bytevector->nix-base32-string nar-hash))
         ,@(if full? `(("nar_hex" . ,(hex nar))) '())
         ("store_path" . ,(fixed-output-path name nar-hash))
         ("daemon"
          . (("path" . ,path)
             ("nar_sha256_hex" . ,(hex (path-info-hash info)))
             ("nar_size" . ,(path-info-nar-size info))
             ("export_size" . ,(bytevector-length export))
             ("export_sha256_hex" . ,(hex (sha256 export)))
             ,@(if full? `(("export_hex" . ,(hex export))) '())
             ("agrees" . ,agrees?))))))))

(write-json!
 `(("cases" . ,(arr (map case->json %cases)))))
