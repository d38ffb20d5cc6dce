;;; derivations.scm -- .drv vectors made with (guix derivations) `derivation'.
;;;
;;; Nothing is built.  Each derivation is written to the daemon by the client
;;; (add-text-to-store of the .drv, which makes the daemon check its output
;;; paths), so every vector here was accepted by the real daemon.  Writes the
;;; JSON object described under "derivations.json" in README.md.

(load (string-append (dirname (current-filename)) "/common.scm"))
(use-modules (guix derivations))

;; Not exported by (guix derivations) 1.5.0.
(define drv->bytes (@@ (guix derivations) derivation->bytevector))

(define store (connect))

(define make-derivation* (@@ (guix derivations) make-derivation))
(define make-derivation-output* (@@ (guix derivations) make-derivation-output))
(define masked-inputs (@@ (guix derivations) derivation/masked-inputs))

(define %system "x86_64-linux")

(define builder
  (add-text-to-store store "builder.sh" "#!/bin/sh\necho building\n" '()))

(define source-dir
  (add-to-store store "src" #t "sha256"
                (materialise `(directory ("main.c" (regular ,(utf8 "int main;\n")))
                                         ("README" (regular ,(utf8 "read me\n")))))))

(define hello-file (materialise `(regular ,(utf8 "hello\n"))))

(define (fod-hash algo recursive?)
  (digest algo (if recursive?
                   (nar-bytes hello-file)
                   (utf8 "hello\n"))))

(define (masked drv)
  "DRV with every output path and every output's environment variable
blanked: the form whose hash names the outputs of a regular derivation."
  (let ((names (map car (derivation-outputs drv))))
    (make-derivation*
     (map (match-lambda
            ((name . out)
             (cons name (make-derivation-output*
                         "" (derivation-output-hash-algo out)
                         (derivation-output-hash out)
                         (derivation-output-recursive? out)))))
          (derivation-outputs drv))
     (derivation-inputs drv) (derivation-sources drv)
     (derivation-system drv) (derivation-builder drv)
     (derivation-builder-arguments drv)
     (map (match-lambda
            ((name . value) (cons name (if (member name names) "" value))))
          (derivation-builder-environment-vars drv))
     #f)))

(define (drv->json name drv note)
  (let* ((bytes (drv->bytes drv))
         (refs (append (map derivation-input-path (derivation-inputs drv))
                       (derivation-sources drv)))
         (fixed? (fixed-output-derivation? drv))
         (masked-drv (masked drv))
         (masked-hash (derivation-hash masked-drv))
         (hashed-form (if fixed?
                          #f
                          (drv->bytes (masked-inputs masked-drv)))))
    ;; Self-check: the output paths follow from the masked hash.
    (unless fixed?
      (for-each (match-lambda
                  ((id . out)
                   (unless (string=? (derivation-output-path out)
                                     (output-path id masked-hash name))
                     (error "output path mismatch" name id))))
                (derivation-outputs drv)))
    `(("name" . ,name)
      ("note" . ,note)
      ("fixed_output" . ,fixed?)
      ("drv_path" . ,(text-path (string-append name ".drv") bytes refs))
      ("daemon_drv_path" . ,(derivation-file-name drv))
      ("references" . ,(arr (sort refs string<?)))
      ("drv_text" . ,(if (valid-utf8? bytes) (utf8->string bytes) 'null))
      ("drv_hex" . ,(hex bytes))
      ("outputs"
       . ,(arr (map (match-lambda
                      ((id . out)
                       `(("id" . ,id)
                         ("path" . ,(derivation-output-path out))
                         ("hash_algo"
                          . ,(match (derivation-output-hash-algo out)
                               (#f "")
                               (algo (string-append
                                      (if (derivation-output-recursive? out) "r:" "")
                                      (symbol->string algo)))))
                         ("hash_hex"
                          . ,(match (derivation-output-hash out)
                               (#f "")
                               (h (hex h)))))))
                    (derivation-outputs drv))))
      ("hash_modulo_hex" . ,(hex (derivation-hash drv)))
      ("masked_hash_hex" . ,(if fixed? 'null (hex masked-hash)))
      ("hashed_form_hex" . ,(if hashed-form (hex hashed-form) 'null)))))

(define (valid-utf8? bv)
  (guard (c (#t #f))
    (equal? bv (string->utf8 (utf8->string bv)))))

(define %results '())

(define (record! name drv note)
  (set! %results (cons (drv->json name drv note) %results))
  drv)

(define one-output
  (record! "one-output"
           (derivation store "one-output" builder '("-c" "echo hello > $out")
                       #:system %system
                       #:env-vars '(("FOO" . "bar") ("A" . "1"))
                       #:sources (list builder))
           "one output; env declared unsorted"))

(define multi-output
  (record! "multi-output"
           (derivation store "multi-output" builder '("-c" "true")
                       #:system %system
                       #:outputs '("lib" "out" "dev")
                       #:sources (list builder))
           "outputs declared as lib, out, dev"))

(define fods
  (append-map
   (lambda (recursive?)
     (map (lambda (algo)
            (let ((name (string-append "fod-" (symbol->string algo)
                                       (if recursive? "-r" "-flat"))))
              (cons name
                    (record! name
                             (derivation store name builder '("-c" "fetch")
                                         #:system %system
                                         #:hash (fod-hash algo recursive?)
                                         #:hash-algo algo
                                         #:recursive? recursive?
                                         #:sources (list builder))
                             (string-append
                              "fixed output, hash of "
                              (if recursive? "the NAR of " "")
                              "the file \"hello\\n\"")))))
          %algorithms))
   '(#f #t)))

(define fod-with-inputs
  (record! "fod-with-inputs"
           (derivation store "fod-with-inputs" builder '("-c" "fetch")
                       #:system %system
                       #:hash (fod-hash 'sha256 #f) #:hash-algo 'sha256
                       #:inputs (list (derivation-input one-output))
                       #:sources (list builder))
           "fixed output with an input derivation: the hash modulo ignores inputs"))

(define builtin-download
  (record! "builtin-download"
           (derivation store "builtin-download" "builtin:download" '()
                       #:system %system
                       #:hash (fod-hash 'sha256 #f) #:hash-algo 'sha256
                       #:env-vars '(("url" . "\"https://example.invalid/hello\"")
                                    ("executable" . "#f")))
           "builtin builder (not a store path), no sources"))

(define with-inputs
  (record! "with-inputs"
           (derivation store "with-inputs" builder '("-c" "true")
                       #:system %system
                       #:inputs (list (derivation-input multi-output '("dev" "lib"))
                                      (derivation-input one-output)
                                      (derivation-input
                                       (assoc-ref fods "fod-sha256-flat")))
                       #:sources (list builder source-dir)
                       #:env-vars `(("src" . ,source-dir)))
           "input derivations (specific outputs, a fixed-output one) and sources"))

(define input-of-input
  (record! "input-of-input"
           (derivation store "input-of-input" builder '("-c" "true")
                       #:system %system
                       #:inputs (list (derivation-input with-inputs)
                                      (derivation-input multi-output '("out")))
                       #:sources (list builder))
           "depends on with-inputs: the hash modulo recurses two levels"))

(define (bytes-as-chars str)
  ;; With Guile 3.0.11, `derivation->bytevector' writes through a port whose
  ;; encoding is ISO-8859-1 whatever %default-port-encoding says, so a
  ;; character above U+00FF makes `derivation' fail and U+0080..U+00FF come
  ;; out as single bytes.  Passing one character per UTF-8 byte makes the
  ;; .drv hold exactly the UTF-8 encoding of STR.
  (list->string (map integer->char (bytevector->u8-list (string->utf8 str)))))

(define escapes
  (record! "escapes"
           (derivation store "escapes" builder
                       (list "quote\"" "back\\slash" "new\nline" "tab\there"
                             "cr\rhere"
                             (bytes-as-chars "utf8 h\u00e9llo \u2713 \U01F600") "")
                       #:system %system
                       #:env-vars `(("quote" . "a\"b")
                                    ("backslash" . "a\\b")
                                    ("newline" . "a\nb")
                                    ("tab" . "a\tb")
                                    ("cr" . "a\rb")
                                    ("utf8" . ,(bytes-as-chars
                                                "h\u00e9llo \u2713 \U01F600"))
                                    ("empty" . "")
                                    ("all" . "\"\\\n\t\r"))
                       #:sources (list builder))
           "arguments and environment needing escapes, and UTF-8 (written as UTF-8 bytes)"))

(define latin1
  (record! "latin1-byte"
           (derivation store "latin1-byte" builder '("-c" "true")
                       #:system %system
                       #:env-vars '(("e-acute" . "caf\u00e9"))
                       #:sources (list builder))
           "what this client writes for U+00E9 given as a character: the single byte E9, so the .drv is not UTF-8"))

(write-json!
 `(("system" . ,%system)
   ("derivations" . ,(arr (reverse %results)))))
